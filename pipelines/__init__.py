"""One conversation: the session wiring the stages together (mic -> listening
-> turn -> reply -> clock -> tracks), on a time source. Imports models/ and
core/, never server/ or tools/."""
