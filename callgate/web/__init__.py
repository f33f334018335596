"""The web: the operator console (server-rendered HTML), the JSON API and the customer portal.

``create_app`` (``callgate.web.app``) builds the FastAPI application; ``callgate web`` serves it,
and ``callgate serve`` does too when ``[web] enabled``. Security parts shared by every page live
in ``callgate.web.security``.
"""
