"""Sources: each turns changes in an external system into ``ChangeEvent`` s."""
