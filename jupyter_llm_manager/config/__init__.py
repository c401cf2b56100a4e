"""Configuration: the file and its layouts, model specs and their fields, settings, tasks, YAML, secrets."""

from .files import CONFIG_ENV, default_config_path, find_config_path, load_config, save_config
from .layouts import ConfigFile

__all__ = ["CONFIG_ENV", "ConfigFile", "default_config_path", "find_config_path", "load_config", "save_config"]
