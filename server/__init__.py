"""The web server: FastAPI routes, the session resource, auth and limits,
metrics, WebRTC glue, the machine plan and the videochat CLI (the top layer)."""
