"""Device profiles (data files, every figure with its source) and offline fit estimates."""

from edgeship.targets.profiles import DvfsState, Profile, list_profiles, load_profile

__all__ = ["Profile", "DvfsState", "load_profile", "list_profiles"]
