"""One exception type for everything a user can fix: what went wrong, and what to do."""


class SlimError(Exception):
    """A problem with the user's input or environment, reported as one clear line.

    `what` says what went wrong, `fix` says what to do about it. The CLI prints
    both and exits non-zero without a traceback (unless --debug).
    """

    def __init__(self, what: str, fix: str = ""):
        self.what = what
        self.fix = fix
        super().__init__(f"{what}. {fix}".strip() if fix else what)


class NotApplicable(SlimError):
    """A technique does not apply to this model or device (a skip, not a failure)."""


def load_reason(e: BaseException) -> str:
    """Why torch.load(weights_only=True) refused a file, in one line (torch's own message is a page)."""
    if "Weights only load failed" in str(e):
        return ("it holds objects other than tensors and plain containers, or is not a torch.save file "
                "(torch.load with weights_only=True refuses to run them)")
    return first_line(e)


def first_line(e: BaseException) -> str:
    """The first non-blank line of an exception's message (its type name if it has none): the
    part of an upstream error worth quoting in a one-line SlimError."""
    return next((ln.strip() for ln in str(e).splitlines() if ln.strip()), type(e).__name__)
