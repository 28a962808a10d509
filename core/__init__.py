"""The bottom layer: configuration models and small helpers every other layer
may import (it imports none of them)."""
