"""What the functions and the worker share: settings, storage, Redis data model, queue, images, models."""
