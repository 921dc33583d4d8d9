"""Exceptions with one-line messages that name the file/row/config key and the reason."""


class PiteError(Exception):
    """Base class for every error this project raises on purpose."""


class ConfigError(PiteError):
    """A config value is missing or wrong: the message names the key and what to set or install."""


class DecodeError(PiteError):
    """A video cannot be decoded: the message names the file and the reason."""


class SchemaError(PiteError):
    """A sample or manifest row breaks a contract of docs/design.md: the message names the field."""


class StageError(PiteError):
    """A clip cannot go through a stage; the pipeline turns it into a reject row with this stage name."""

    def __init__(self, stage: str, message: str):
        super().__init__(message)
        self.stage = stage
