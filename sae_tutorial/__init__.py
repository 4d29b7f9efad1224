"""Learn and reproduce sparse autoencoders (dictionary learning) for mechanistic interpretability, from toy models of superposition to a small open language model.

Modules:

- `sae_tutorial.native`: Two steps of the fast paths of [02b_fast_paths](02b_fast_paths.ipynb), written in C and compiled on first use by the machine's own compiler: the top-k choice and the sparse backward. The same numbers as the PyTorch path, several times less work on a CPU; the PyTorch path stays beside them and takes over wherever no compiler is found."""

__version__ = "0.0.1"
