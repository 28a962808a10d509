"""The stages (vad, asr, llm, tts, s2s, avatar), one package each with one
file per backend, behind the streaming contracts in base.py; loaded once per
process by registry.py. Imports only core/."""
