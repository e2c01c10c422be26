"""The speaking lab: a tiny Llasa system that really speaks, built offline from espeak-ng speech.

``python -m lab build`` runs four stages, each deterministic given its seed:

1. ``lab.corpus``: template sentences spoken by several espeak-ng voices (16 kHz), train / held-out split;
2. ``lab.codec``: a tiny X-Codec2 (log-mel conv encoder -> FSQ [4]*8 -> the project's ``XCodec2Decoder``),
   saved in the real checkpoint layout;
3. encoding every utterance to codes with that encoder;
4. ``lab.sft``: a tiny Llama with the Llasa tokenizer fine-tuned on plain and voice-cloning prompts.

The results load through the same code as SmolKartoffel and X-Codec2 (named assets ``lab-llasa``,
``lab-xcodec2``; see ``lab.assets``).
"""
