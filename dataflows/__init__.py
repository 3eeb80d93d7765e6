"""dataflows"""
