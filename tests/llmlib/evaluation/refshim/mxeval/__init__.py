"""Stand-in for amazon-science/mxeval (not on PyPI): runs MBXP programs in a subprocess the way
mxeval's check_correctness* build and judge them (python: prompt+completion+test+check(entry_point))."""
