"""Report rendering, behind one small function so a deployer can swap the renderer."""
