"""Fine-tuning used by the product (the RAIT/DPO baselines) and by the demo pair's recipe.

- :mod:`.lora` — seeded, deterministic LoRA fine-tuning on prompt/response pairs (loss on the response only).
"""
