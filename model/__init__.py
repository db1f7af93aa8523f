"""The Keras 3 siamese network: twin embedding networks and the |f(a) - f(b)| -> sigmoid head.

Filled in by the training work (issue #3); the data stages do not import it.
"""
