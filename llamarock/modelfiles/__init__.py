"""Model files, pure: how a Hugging Face Llama checkpoint's tensors map onto llama.cpp's GGUF layout (names come
from the ``gguf`` package's ``TensorNameMap``; the rotary permutation of the query and key projections is here)."""
