"""Import-only stand-ins the CPU layer puts on the Ray workers' PYTHONPATH (cpu_compat.STUB_DIR);
a package only so that a wheel ships them."""
