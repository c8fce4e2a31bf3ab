"""The linear layers an adapter can adapt, named once for the recipe's default and the GGUF export.

A module of its own because it is light: the CLI reads the recipe's defaults without importing torch.
"""

# The projections of a decoder block in the Llama family (Granite, Qwen, SmolLM...): attention and MLP.
DECODER_PROJECTIONS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
