"""What the tests share and are not tests themselves: harnesses, fake apps, tier marks."""
