"""Training: LLaVA two-stage visual instruction tuning and its data pipeline."""
