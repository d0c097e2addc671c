"""What a trained model is judged by: `report` (the log p(x) report, ``python -m inference.evaluate``),
`figures` (pictures of a trained model, ``python -m inference.figures``) and `compare` (paired per-image
differences of reports on the same images, ``python -m inference.compare``). Built on `inference.estimators`.
"""
