"""Pictures of predictions: :mod:`.draw` renders an image with its detections (and ground truth)
and writes PNGs; :mod:`.predictions` runs a Predictor on image files or dataset images and draws
them (``tools/visualize.py``, the demo), and finds the class names of a config's dataset."""
