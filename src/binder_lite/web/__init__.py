"""The binder-lite web service: launch pages, BinderHub's API, a proxy to sessions."""
