"""Text-to-speech side: Llasa prompts, speech tokens, X-Codec2 decoding, data, offline tiny models."""
