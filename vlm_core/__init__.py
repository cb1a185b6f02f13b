"""vlm_core: compose a vision encoder, a projector and an LLM, train it in two stages, evaluate it.

Knows nothing of Kubernetes or Kubeflow; the outer layers (operators, pipelines) build on it.
"""

__version__ = "0.1.0"
