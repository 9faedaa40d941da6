"""The one error a front end shows the operator as it is."""


class ActionError(Exception):
    """An action (or CLI command) cannot be done; the message tells the operator why.

    Raised before anything changes: a failed action leaves the host and the ledger as they were.
    """
