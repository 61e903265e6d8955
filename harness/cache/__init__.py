"""A pipeline's cache folder: building, verifying and repairing it (`build`), its `manifest`, and migrating a legacy
cache to the native one (`migrate`)."""
