"""The Table 1 baselines of the DynaMO paper, one small module each (DESIGN section 4.4)."""
