"""Offline tools the server and CLI call: assembling weights/ from registry
packages, preparing avatars. They import the stages, never the pipeline or
the server."""
