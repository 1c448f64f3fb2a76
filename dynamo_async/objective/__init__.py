"""The learner's objective as registered components, one module each (docs/design.md section 4.6).

``registry`` (the component kinds and the registry), ``settings`` (the ``objective`` config
section built from the registry), ``presets`` (what each ``method`` expands to), ``state``
(what flows through the stages of one micro-batch) and ``components/`` (one file per
component). Everything here but ``state`` imports without torch, so configs parse fast.
"""
