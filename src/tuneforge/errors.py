"""User-facing errors: the CLI prints them as one line and exits with code 2."""


class TuneforgeError(Exception):
    """A problem the user can fix (bad recipe, bad data, missing model). Never a bug."""

    exit_code = 2


class ConfigError(TuneforgeError):
    pass


class DataError(TuneforgeError):
    pass


class ModelError(TuneforgeError):
    pass


class MissingLabelsError(DataError):
    """A data file without the label column (e.g. an unlabelled GLUE test.tsv)."""
