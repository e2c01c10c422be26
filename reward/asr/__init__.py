"""Audio → text: the ``Transcript`` type and ``Transcriber`` protocol (``transcript``, a leaf) and the backends
beside it, ``whisper`` (faster-whisper in process) and ``http`` (``python -m reward.service`` elsewhere).
The composition root (``recipe.build_transcriber``) picks one from ``[transcriber] backend``."""
