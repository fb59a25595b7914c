"""Errors meant for users: the CLI prints their one-sentence message and exits with ``exit_code``."""


class UserError(Exception):
    exit_code = 2
