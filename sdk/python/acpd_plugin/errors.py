"""What a plugin raises to refuse its config or fail one call (any other exception traps the
instance, as a Rust panic does)."""


class Error(Exception):
    """This call failed: the daemon applies the hook's failure policy."""

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class ConfigError(Error):
    """The operator's config is unusable: the plugin is not activated."""
