"""polymodal: joint training of multimodal models on Ray.

Models, objectives, decoding and evaluation are plain torch; train/ wires them into Ray.
"""

__version__ = "0.1.0"
