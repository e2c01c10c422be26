"""X-Codec2's fixed numbers, torch-free: the reward side reads them without importing the decoder (and torch)."""

SAMPLE_RATE = 16000  # Hz, of the decoder's output and of every clip the reward side reads
SAMPLES_PER_CODE = 320  # the decoder's hop: one speech code is 20 ms of audio
CODES_PER_SECOND = SAMPLE_RATE // SAMPLES_PER_CODE  # 50
NUM_CODES = 4**8  # 65,536: FSQ with 8 levels of 4 values, one Llasa token <|s_N|> per code
