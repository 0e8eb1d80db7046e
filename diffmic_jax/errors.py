"""The error a user can fix: bad flag, config, data, checkpoint or permission.

Raise `UserError` (or a subclass) with a message that names the thing and the fix. The entry
point prints such errors as one line and exits with `EXIT_USER_ERROR`, without a traceback;
anything else is a bug and keeps its traceback.
"""

EXIT_USER_ERROR = 2


class UserError(Exception):
  """A problem in what the user gave (flag, config, files); the message says what to change."""


# OS errors that name the user's own path: a missing file or folder, or no permission.
USER_OS_ERRORS = (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)


def is_user_error(error: BaseException) -> bool:
  return isinstance(error, (UserError, *USER_OS_ERRORS))


def one_line(error: BaseException) -> str:
  """The error's message on one line (lines joined by '; '), without the class name."""
  text = str(error)
  if isinstance(error, KeyError) and len(error.args) == 1:
    text = str(error.args[0])  # str(KeyError) adds quotes and escapes the newlines.
  if isinstance(error, OSError) and error.filename is not None and error.strerror:
    text = f'{error.filename}: {error.strerror}'
  return '; '.join(line.strip() for line in text.splitlines() if line.strip())
