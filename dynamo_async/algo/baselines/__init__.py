"""The Table 1 baselines of the DynaMO paper, one small module each (docs/design.md section 4.4)."""
