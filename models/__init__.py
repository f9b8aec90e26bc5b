"""The channel-parallel VGG16 and its parts (see DESIGN in the README)."""
from models.vgg import VGG16  # noqa: F401
