"""tlgates: adaptive transfer learning, one paper at a time."""
__version__ = "0.1.0"
