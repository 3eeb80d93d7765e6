"""OPC UA connector (asyncua): config models, the device client, the Bytewax source, a simulator."""
