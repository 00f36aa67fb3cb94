"""The shortcut control: what a classifier gets from how the images were collected (ShortcutControl)."""
