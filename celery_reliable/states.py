"""Custom task states, shown by the result backend and Flower."""

#: The message had already been processed under this handler key; the body did not run.
DUPLICATE = "DUPLICATE"
