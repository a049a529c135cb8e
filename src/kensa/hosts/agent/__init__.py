"""kensa's agent: the code that runs on a remote target, sent there by the controller.

:mod:`~kensa.hosts.agent.bootstrap` verifies and loads the payload,
:mod:`~kensa.hosts.agent.compat` supplies what Python 3.6 lacks,
:mod:`~kensa.hosts.agent.server` answers requests and
:mod:`~kensa.hosts.agent.wire` is the protocol both sides speak. The
controller's side is :mod:`kensa.hosts.remote`; what is sent is
:mod:`kensa.hosts.payload`'s. Nothing here imports anything at package import.
"""
