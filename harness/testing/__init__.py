"""Tools for the test suite that must live inside the package, because the product code calls them (``faults``)."""
