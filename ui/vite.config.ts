// The bundle is built into the Python package (api/ui_dist) and committed; `just ui-check` rebuilds it
// and fails when it differs, so the build must be deterministic: content-hashed names, no timestamps,
// no absolute paths in the output.
import { defineConfig } from "vite";
import react from "@vitejs/plugin-react";

const api = process.env.NEXUS_API ?? "http://127.0.0.1:8080";

export default defineConfig({
  plugins: [react()],
  base: "/",
  build: {
    outDir: "../api/ui_dist",
    emptyOutDir: true,
    sourcemap: false,
    reportCompressedSize: true,
    chunkSizeWarningLimit: 1500,
  },
  server: {
    proxy: {
      "/api": { target: api, ws: true, changeOrigin: false },
      "/schema": api,
    },
  },
});
