"""megatron-core GPT trainer: WSO pre-training, decay branches, SFT, evaluation and export."""
