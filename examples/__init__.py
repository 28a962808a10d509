"""Examples of using videochat from other programs and sites."""
