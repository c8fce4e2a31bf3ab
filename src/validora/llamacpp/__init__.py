"""llama.cpp's llama-server: building it, running it, exporting adapters to GGUF, serving."""
