"""The avatar stage: CPU renderers of photo and video avatars, their assets, the mouth track."""
