"""Speech rewards: decode and transcribe once per step, then cheap pure reward terms."""
