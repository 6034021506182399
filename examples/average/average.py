"""The example app for `mvctl build`: prints the average of a list."""

numbers = [1, 2, 3, 4, 5]
print(f"Average: {sum(numbers) / len(numbers)}")
